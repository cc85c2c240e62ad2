"""The embedded default: a tiny Wan pretrained on a synthetic video world, shipped in assets/.

The training loop never imports this package: the model plugs in as `model.type: tiny_wan` and
its reward as `reward.type: world`, like any other backbone and reward; only prompt loading knows
the world's split names (`data.prompts: train`).
"""
