"""Intent recognition: a sequence classifier on any backbone plugin, with accuracy and macro-F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from cs_lightning.errors import ConfigError
from cs_lightning.models.base import BackboneModule


def per_class_report(matrix: torch.Tensor, labels: list[str]) -> dict:
    """Precision, recall, F1 and support per label, from a confusion matrix (rows gold, columns predicted)."""
    tp = matrix.diag()
    support, predicted = matrix.sum(1), matrix.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    rows = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(labels, precision, recall, f1, support)}
    present = support > 0
    return {"accuracy": float(tp.sum() / matrix.sum().clamp(min=1)),
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
            "examples": int(matrix.sum()), "per_class": rows, "confusion": matrix.long().tolist()}


class IntentClassifier(BackboneModule):
    """Fine-tunes a BERT, GPT or T5 (or any plugin's) backbone to recognise customer intents.

    Args:
        backbone: name of the backbone plugin (``cs-backbones`` lists them): bert, gpt, t5, ...
        model_name_or_path: hub id or local folder of the weights (or, with ``pretrained: false``, of the
            architecture); None builds ``model_size`` from the plugin's configs.
        pretrained: start from the weights of ``model_name_or_path``; false initialises randomly.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (never on biases and norm weights).
        warmup_ratio: share of the training steps spent warming the learning rate up from 0.
        model_size: architecture when there is no ``model_name_or_path``: tiny, small or base.
        config_overrides: Hugging Face config attributes to change, e.g. ``{hidden_dropout_prob: 0.2}``.
        label_smoothing: cross-entropy label smoothing.
        top_k: alternatives reported with each prediction.
        class_weights: weight the loss by inverse label frequency in the training data (imbalanced data).
        labels: the intent names, in class-index order; set by the CLI from the data module.
        label_counts: training examples per label, in class-index order; set by the CLI from the data module.
        tokenizer_path: the tokenizer folder or hub id; set by the CLI from the data module.
    """

    task = "intent"

    def __init__(self, backbone: str = "bert", model_name_or_path: str | None = None, pretrained: bool = True,
                 learning_rate: float = 5e-5, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                 model_size: str = "small", config_overrides: dict | None = None, label_smoothing: float = 0.0,
                 top_k: int = 3, class_weights: bool = False, labels: list[str] | None = None,
                 label_counts: list[int] | None = None, tokenizer_path: str | None = None):
        super().__init__()
        if not labels or len(labels) < 2:
            raise ConfigError("model.labels", "an intent classifier needs at least two label names",
                              "give data.train_file; cs-train passes its labels to the model")
        if learning_rate <= 0:
            raise ConfigError("model.learning_rate", f"must be positive, got {learning_rate}")
        self.save_hyperparameters()
        self.build_backbone(backbone, model_name_or_path, pretrained, tokenizer_path, model_size, config_overrides,
                            labels=list(labels))
        n = len(labels)
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.val_f1 = MulticlassF1Score(n, average="macro")
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.test_f1 = MulticlassF1Score(n, average="macro")
        self.test_confusion = MulticlassConfusionMatrix(n)  # streaming: per-class figures come from it
        self.test_report: dict | None = None
        self.misclassified: list[dict] = []
        weights = None
        if class_weights:
            if not label_counts or len(label_counts) != n:
                raise ConfigError("model.class_weights", "needs the training label counts",
                                  "use a cs-lightning DataModule with data.train_file (cs-train links the counts)")
            counts = torch.tensor(label_counts, dtype=torch.float).clamp(min=1)
            weights = counts.sum() / (n * counts)
        self.register_buffer("loss_weights", weights, persistent=False)

    @property
    def labels(self) -> list[str]:
        return list(self.hparams.labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits over the intents."""
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(input_ids=input_ids, **kwargs).logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.loss_weights,
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(**self.model_inputs(batch))
        loss = self._loss(logits, batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _evaluate(self, batch: dict, stage: str, acc, f1) -> None:
        logits = self(**self.model_inputs(batch))
        labels = batch["labels"]
        n = len(labels)
        self.log(f"{stage}/loss", self._loss(logits, labels), on_epoch=True, batch_size=n, sync_dist=True)
        preds = logits.argmax(-1)
        acc.update(preds, labels)
        f1.update(preds, labels)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}/f1_macro", f1, on_epoch=True, prog_bar=stage == "val", batch_size=n)
        if stage == "test":
            self.test_confusion.update(preds, labels)
            wrong = (preds != labels).nonzero().flatten().tolist()
            if wrong:  # only the errors are kept, a few per batch
                conf = logits.float().softmax(-1).max(-1).values
                names = self.labels
                self.misclassified += [{"id": batch["ids"][i], "gold": names[labels[i]], "predicted": names[preds[i]],
                                        "confidence": round(float(conf[i]), 4)} for i in wrong]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc, self.val_f1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc, self.test_f1)

    def on_test_epoch_start(self) -> None:
        self.misclassified = []
        self.test_report = None

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute().float()  # rows: gold, columns: predicted
        self.test_confusion.reset()
        self.test_report = per_class_report(matrix, self.labels)
        for name, row in self.test_report["per_class"].items():
            self.log(f"test/f1/{name}", row["f1"])

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """One dict per input: its id, the predicted label, its confidence and the top-k alternatives."""
        probs = self(**self.model_inputs(batch)).float().softmax(-1)
        k = min(self.hparams.top_k, probs.shape[-1])
        conf, idx = probs.topk(k, dim=-1)
        conf, idx = conf.cpu().tolist(), idx.cpu().tolist()
        names = self.labels
        return [{"id": rid, "label": names[i[0]], "confidence": c[0],
                 "top_k": [{"label": names[j], "confidence": p} for j, p in zip(i, c)]}
                for rid, i, c in zip(batch["ids"], idx, conf)]

    @torch.no_grad()
    def predict_texts(self, texts: list[str], max_length: int = 128) -> list[str]:
        """Label names for raw messages (no history), for quick checks and tests."""
        enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        was_training = self.training
        self.eval()
        preds = self(**enc).argmax(-1).tolist()
        self.train(was_training)
        return [self.labels[i] for i in preds]
