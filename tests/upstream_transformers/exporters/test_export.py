"""``ExportTesterMixin``, the base class of transformers' ``ModelTesterMixin``.

transformers' version holds its export tests (torch.export, ONNX, ExecuTorch, ... backends) and is not in the
sdist. This one adds no tests: those export tests are not run against vit_zoo (vit_zoo's own ``torch.export``
coverage lives in its test suite).
"""


class ExportTesterMixin:
    pass
