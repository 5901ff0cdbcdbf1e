"""The training pipeline (a dev-time extra: `pip install 'icu-edge[train]'`, torch on CPU).

`python -m engines.train --seed 7 --out engines/models` trains the shipped models, evaluates them on
held-out patients, exports ONNX and writes each model's card. Nothing outside this package imports torch.
"""
