"""Training, adaptation, evaluation, prediction and run folders.

The four commands are plain functions taking a config dataclass::

    pretrain(PretrainConfig) -> RunResult
    adapt(AdaptConfig) -> RunResult
    evaluate(EvaluateConfig) -> dict
    predict(PredictConfig) -> Path
"""

from taa.train.adapt import adapt
from taa.train.checkpoint import load_checkpoint, save_checkpoint
from taa.train.config import AdaptConfig, EvaluateConfig, PredictConfig, PretrainConfig
from taa.train.divergence import estimate_wasserstein
from taa.train.evaluate import evaluate, evaluate_model
from taa.train.metrics import group_auc, log_loss, roc_auc, task_metrics
from taa.train.predict import Scorer, TorchScorer, predict
from taa.train.pretrain import pretrain
from taa.train.runs import RunResult

__all__ = [
    "AdaptConfig",
    "EvaluateConfig",
    "PredictConfig",
    "PretrainConfig",
    "RunResult",
    "Scorer",
    "TorchScorer",
    "adapt",
    "estimate_wasserstein",
    "evaluate",
    "evaluate_model",
    "group_auc",
    "load_checkpoint",
    "log_loss",
    "predict",
    "pretrain",
    "roc_auc",
    "save_checkpoint",
    "task_metrics",
]
