"""Warnings executorch 1.5.1 / torch 2.13 raise that tests touching executorch must allow."""

# pyproject turns warnings into errors. These come from executorch 1.5.1 / torch 2.13 internals,
# on the first import of the executorch runtime and exporter, and on every training-module load;
# we cannot avoid them, and they say nothing about our code:
# - executorch marks its training API experimental (ExperimentalWarning, a DeprecationWarning);
# - executorch.exir reads its bundled schema with deprecated importlib.resources helpers;
# - a package executorch imports decorates methods with the deprecated torch.jit.script_method.
# Tests opt in with `pytest.mark.filterwarnings(spec)` for each spec, nothing wider.
EXECUTORCH_WARNINGS = (
    "ignore:This API is experimental and subject to change without notice:DeprecationWarning",
    "ignore:read_text is deprecated:DeprecationWarning",
    "ignore:open_text is deprecated:DeprecationWarning",
    r"ignore:`torch\.jit\.script_method` is deprecated:DeprecationWarning",
)
