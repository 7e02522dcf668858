"""``GenerationTesterMixin``: the mixin a tester of a model that can ``generate`` must inherit.

``ModelTesterMixin.test_generation_tester_mixin_inheritance`` asserts that a tester inherits it exactly when its
models can generate; vit_zoo's cannot, so its tester must not, and the class needs no content here.
"""


class GenerationTesterMixin:
    pass
