"""The edgefl server with model "cifar10" padded to a synthetic large model, for the download benchmark.

    python benchmarks/_big_model_server.py PARAMS server --http-port 0 ...   (then the usual server flags)

Adds one tensor `bench.pad` so that the model holds PARAMS float32 parameters (1,500,000 = 6 MB, the
size of the ExecuTorch programs DESIGN.md plans for). Only this process sees the change: leaves get
the parameter shapes from the server, so they serve the padded model as they would any other.
"""

import math
import sys

from edge_gateway.cli import main
from edge_gateway.models import specs

params = int(sys.argv.pop(1))
layout = specs.PARAM_SPECS["cifar10"]
pad = params - sum(math.prod(p.shape) for p in layout)
specs.PARAM_SPECS["cifar10"] = layout + (specs.ParamSpec("bench.pad", (pad,), 1000),)
sys.exit(main(sys.argv[1:]))
