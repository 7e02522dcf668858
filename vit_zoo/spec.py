"""What a tower is made of, in plain Python: no torch, so the CLI can show it without importing torch.

It travels flat with ``model.py`` inside saved folders (remote code), so it imports nothing of vit_zoo.
"""

ACTIVATIONS = ("quick_gelu", "gelu")  # OpenAI's QuickGELU, or exact GELU (open_clip's non-QuickGELU models)
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # the torch dtypes weights are stored or run in
