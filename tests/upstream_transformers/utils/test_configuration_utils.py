"""``config_common_kwargs``: values other than the defaults for ``PreTrainedConfig``'s common fields.

``ConfigTester.check_config_arguments_init`` builds a config from them and checks that each one was kept
(``dtype`` as ``torch.float16``).
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["VitZooModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
