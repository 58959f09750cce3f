"""`import edge_gateway.models` must not load torch: proxies and leaves import it without torch."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, check=True)
    return out.stdout.strip()


def test_import_does_not_load_torch_or_sklearn() -> None:
    code = (
        "import sys, edge_gateway.models as m\n"
        "from edge_gateway.models import MODEL_NAMES, DigitsDemo, build_net, dirichlet_partition, evaluate,"
        " initial_weights, load_dataset, simulate_fedavg, train_local\n"
        "m.initial_weights('cifar10'); m.load_dataset('xor', 'train'); m.load_dataset('cifar10', 'test')\n"
        "print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    assert run(code) == "False False"


def test_digits_and_xor_train_and_evaluate_without_torch() -> None:
    code = (
        "import sys\n"
        "from edge_gateway.models import dirichlet_partition, evaluate, initial_weights, load_dataset, train_local\n"
        "for name in ('xor', 'digits'):\n"
        "    x, y = load_dataset(name, 'train'); w = initial_weights(name)\n"
        "    d, n, loss = train_local(name, w, x[:30], y[:30], epochs=1, lr=0.1, batch_size=8)\n"
        "    evaluate(name, w, x, y)\n"
        "print('torch' in sys.modules)"
    )
    assert run(code) == "False"


def test_torch_loads_when_a_net_is_needed() -> None:
    code = "import sys\nfrom edge_gateway.models import build_net\nbuild_net('xor')\nprint('torch' in sys.modules)"
    assert run(code) == "True"
