"""transformers' sdist tests (unpacked beside this file by ``tests/upstream.py``) as a package.

transformers' ``tests/`` folder is a package in its repository; the sdist leaves out its ``__init__.py`` and the
sub-packages ``exporters``, ``generation`` and ``utils`` that ``test_modeling_common.py`` and
``test_configuration_common.py`` import from. The modules here stand in for those three imports; they are
vit_zoo's own code, not transformers'.
"""
