"""Intent recognition: a sequence classifier on any backbone plugin, with accuracy and macro-F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from cs_lightning.distributed import gather_lists, gather_rows, global_mean
from cs_lightning.errors import ConfigError
from cs_lightning.models.base import BackboneModule
from cs_lightning.models.calibration import (BINS, MIN_EXAMPLES, calibration_figures, expected_calibration_error,
                                             fit_temperature, reliability_bins)


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


def most_confused(matrix, labels: list[str], top: int = 20) -> list[dict]:
    """The ``top`` largest off-diagonal cells of a confusion matrix (rows gold, columns predicted), most examples
    first (then by name): ``{"gold", "predicted", "count"}``."""
    m = torch.as_tensor(matrix).long().clone()
    m.fill_diagonal_(0)
    cells = [(int(m[i, j]), labels[i], labels[j]) for i, j in m.nonzero().tolist()]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"gold": gold, "predicted": predicted, "count": count} for count, gold, predicted in cells[:top]]


def fit_threshold(confidence: torch.Tensor, argmax: torch.Tensor, gold: torch.Tensor, oos_index: int,
                  classes: int, target: str = "macro_f1") -> float:
    """The out-of-scope confidence threshold that serves ``target`` best on these validation scores.

    ``macro_f1``: the threshold with the best macro-F1 over all classes, out-of-scope included.
    ``precision:P``: the lowest threshold whose accepted in-scope answers are right at least a share P of the time
    (the most coverage at that precision); 1.0 (reject everything) if none reaches it.
    """
    candidates = torch.cat([torch.zeros(1, device=confidence.device), confidence.unique()])
    best, best_score = 0.0, -1.0
    for t in candidates.tolist():
        preds = torch.where(confidence < t, torch.full_like(argmax, oos_index), argmax)
        if target == "macro_f1":
            matrix = torch.bincount(gold * classes + preds, minlength=classes * classes).reshape(classes, classes)
            score = per_class_report(matrix.float(), [str(i) for i in range(classes)])["f1_macro"]
        else:
            accepted = preds != oos_index
            if not bool(accepted.any()):
                continue
            precision = float((preds[accepted] == gold[accepted]).float().mean())
            if precision >= float(target.split(":")[1]):
                return t
            continue
        if score > best_score + 1e-12:
            best, best_score = t, score
    return best if target == "macro_f1" else 1.0


class IntentClassifier(BackboneModule):
    """Fine-tunes a BERT, GPT or T5 (or any plugin's) backbone to recognise customer intents.

    Args:
        backbone: name of the backbone plugin (``cs-backbones`` lists them): bert, gpt, t5, generic, ..., or
            ``auto``: the plugin made for the weights' model type, else the generic family (any covered type).
        model_name_or_path: hub id or local folder of the weights (or, with ``pretrained: false``, of the
            architecture); None builds ``model_size`` from the plugin's configs.
        model_type: Hugging Face model type of a model built from scratch with ``auto`` or ``generic``
            (``roberta``, ``qwen2``...); with weights, their config.json decides.
        pretrained: start from the weights of ``model_name_or_path``; false initialises randomly.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (never on biases and norm weights).
        warmup_ratio: share of the training steps spent warming the learning rate up from 0.
        model_size: architecture when there is no ``model_name_or_path``: tiny, small or base.
        config_overrides: Hugging Face config attributes to change, e.g. ``{hidden_dropout_prob: 0.2}``.
        trust_remote_code: run Python code that hub weights ship with (off: only built-in architectures load).
        compile: run the model's forward through ``torch.compile`` (pair it with ``data.pad_to_buckets``).
        peft: train adapters instead of every weight (null: full fine-tuning), with the ``peft`` library:
            ``{method: lora|dora|ia3, r: 8, alpha: 16, dropout: 0.05, target_modules: null}``; target_modules null
            takes the attention and MLP projections of the model's blocks. The head trains in full; checkpoints hold
            what trains plus a hash of the base weights (README, "Adapters").
        gradient_checkpointing: recompute the blocks' activations in the backward pass instead of keeping them
            (less memory, about a third more compute).
        label_smoothing: cross-entropy label smoothing.
        top_k: alternatives reported with each prediction.
        class_weights: weight the loss by inverse label frequency in the training data (imbalanced data).
        oos_label: the out-of-scope (fallback) label, linked from ``data.oos_label``: when the model's confidence is
            below the threshold it answers this label. It needs no training examples.
        oos_threshold: a fixed confidence threshold; None fits it on the validation set after every validation. It
            applies to the calibrated confidence (the largest probability of ``softmax(logits / temperature)``).
        oos_target: what the fitted threshold optimises on validation: ``macro_f1`` (over the intents and
            out-of-scope), or ``precision:0.95`` (the lowest threshold whose accepted in-scope answers are 95% right).
        calibrate: fit a temperature on the validation set after every validation (needs at least 20 validation
            examples and one error), so confidences are calibrated; false keeps the raw softmax (temperature 1).
        labels: the intent names, in class-index order; set by the CLI from the data module.
        label_counts: training examples per label, in class-index order; set by the CLI from the data module.
        tokenizer_path: the tokenizer folder or hub id; set by the CLI from the data module.
    """

    task = "intent"

    def __init__(self, backbone: str = "bert", model_name_or_path: str | None = None, model_type: str | None = None,
                 pretrained: bool = True,
                 learning_rate: float = 5e-5, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                 model_size: str = "small", config_overrides: dict | None = None, label_smoothing: float = 0.0,
                 top_k: int = 3, class_weights: bool = False, oos_label: str | None = None,
                 oos_threshold: float | None = None, oos_target: str = "macro_f1", labels: list[str] | None = None,
                 label_counts: list[int] | None = None, tokenizer_path: str | None = None,
                 trust_remote_code: bool = False, compile: bool = False, peft: dict | None = None,
                 gradient_checkpointing: bool = False, calibrate: bool = True):
        super().__init__()
        if not labels or len(labels) < 2:
            raise ConfigError("model.labels", "an intent classifier needs at least two label names",
                              "give data.train_file; cs-train passes its labels to the model")
        if learning_rate <= 0:
            raise ConfigError("model.learning_rate", f"must be positive, got {learning_rate}")
        self.save_hyperparameters()
        self.build_backbone(backbone, model_name_or_path, pretrained, tokenizer_path, model_size, config_overrides,
                            trust_remote_code=trust_remote_code, model_type=model_type, peft=peft,
                            gradient_checkpointing=gradient_checkpointing, labels=list(labels))
        n = len(labels)
        if oos_target != "macro_f1" and not (oos_target.startswith("precision:") and
                                             0 < float(oos_target.split(":")[1] or 0) <= 1):
            raise ConfigError("model.oos_target", f"unknown target {oos_target!r}",
                              "use macro_f1 or precision:0.95 (any value in (0, 1])")
        # out-of-scope examples without a class of their own get the index after the last class
        self.oos_index = None if not oos_label else (labels.index(oos_label) if oos_label in labels else n)
        m = n + 1 if self.oos_index == n else n  # classes the metrics count
        self.metric_names = list(labels) + ([oos_label] if m > n else [])
        self.val_acc = MulticlassAccuracy(m, average="micro")
        self.val_f1 = MulticlassF1Score(m, average="macro")
        self.test_acc = MulticlassAccuracy(m, average="micro")
        self.test_f1 = MulticlassF1Score(m, average="macro")
        self.test_confusion = MulticlassConfusionMatrix(m)  # streaming: per-class figures come from it
        # every epoch-level number is a torchmetrics state synchronised once, at compute: exact over any number of
        # ranks, whatever each rank's share of an uneven split (a mean of per-rank means would not be)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.oos_counts = nn.ModuleDict({f"{stage}_{name}_{part}": SumMetric() for stage in ("val", "test")
                                         for name in ("in_scope_acc", "recall") for part in ("hits", "total")}
                                        if oos_label else {})
        if self.oos_index is not None:  # saved in checkpoints (only out-of-scope models have one)
            self.register_buffer("threshold", torch.tensor(float(oos_threshold or 0.0)))
        # confidences are softmax(logits / temperature); fitted on the validation set, saved in checkpoints
        self.register_buffer("temperature", torch.tensor(1.0))
        #: the validation figures of the fitted temperature (ece_before, ece_after, examples, split), or None
        self.calibration: dict | None = None
        self._val_logits: list[torch.Tensor] = []  # logits and gold label per validation example
        self._test_confidence: list[torch.Tensor] = []  # raw and calibrated confidence, correct, per test example
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

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        # out-of-scope examples without a class have no loss; masked with ignore_index rather than by indexing, which
        # would read the mask back to the host (a device sync) at every training step
        labels = labels.masked_fill(labels >= logits.shape[-1], -100)
        return F.cross_entropy(logits.float(), labels, weight=self.loss_weights, ignore_index=-100,
                               label_smoothing=self.hparams.label_smoothing, reduction=reduction)

    def _update_loss(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds the batch to the epoch's loss, weighted exactly as ``cross_entropy``'s mean over the whole split."""
        losses = self._loss(logits, labels, reduction="none")  # 0 for examples without a class
        known = labels < logits.shape[-1]
        base = (self.loss_weights[labels.clamp(max=logits.shape[-1] - 1)] if self.loss_weights is not None
                else torch.ones_like(losses))
        weights = torch.where(known, base, torch.zeros_like(base))
        metric = self.eval_loss[stage]
        metric.update(losses / base, weight=weights)
        self.log(f"{stage}/loss", metric, on_epoch=True, on_step=False)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: ``softmax(logits / temperature)``."""
        return (logits.float() / self.temperature).softmax(-1)

    def decide(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted class and (calibrated) confidence; below the out-of-scope threshold the prediction is
        ``oos_label``."""
        confidence, preds = self.probabilities(logits).max(-1)
        if self.oos_index is not None:
            preds = torch.where(confidence < self.threshold, torch.full_like(preds, self.oos_index), preds)
        return preds, confidence

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(**self.model_inputs(batch))
        labels = batch["labels"]
        if "padding" in batch:  # samples repeated to fill a short last batch train nothing
            labels = labels.masked_fill(batch["padding"], -100)
        # cross_entropy's mean divides the summed losses by the summed class weights of the examples with a class;
        # here both sums run over the whole global batch: on any number of ranks, the gradient of one rank
        losses = self._loss(logits, labels, reduction="none")  # 0 for examples without a class (and padding)
        known = (labels >= 0) & (labels < logits.shape[-1])
        weights = (self.loss_weights[labels.clamp(0, logits.shape[-1] - 1)] if self.loss_weights is not None
                   else torch.ones_like(losses))
        loss, mean = global_mean(losses.sum(), torch.where(known, weights, torch.zeros_like(weights)).sum())
        self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self(**self.model_inputs(batch))
        labels = batch["labels"]
        self._update_loss(stage, logits, labels)  # every rank logs at every step (DDP: same collectives)
        if stage == "val" and (self.hparams.calibrate or self.oos_index is not None):
            # the temperature (and threshold) are fitted on the whole split when validation ends
            self._val_logits.append(torch.cat([logits.detach().float(), labels.unsqueeze(1).float()], 1))
            if self.oos_index is not None:  # decisions wait for this validation's temperature and threshold
                return
        preds, confidence = self.decide(logits)
        self._update_metrics(stage, preds, labels)
        if stage == "test":
            known = labels < logits.shape[-1]  # calibration is measured on examples that have a class
            if known.any():
                raw = logits[known].float().softmax(-1).max(-1)
                correct = (raw.indices == labels[known]).float()
                self._test_confidence.append(torch.stack([raw.values, confidence[known], correct], 1).detach())
            self.test_confusion.update(preds, labels)
            wrong = (preds != labels).nonzero().flatten().tolist()
            if wrong:  # only the errors are kept, a few per batch
                names = self.metric_names
                self.misclassified += [{"id": batch["ids"][i], "gold": names[labels[i]], "predicted": names[preds[i]],
                                        "confidence": round(float(confidence[i]), 4)} for i in wrong]

    def _update_metrics(self, stage: str, preds: torch.Tensor, labels: torch.Tensor) -> None:
        acc, f1 = (self.val_acc, self.val_f1) if stage == "val" else (self.test_acc, self.test_f1)
        acc.update(preds, labels)
        f1.update(preds, labels)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log(f"{stage}/f1_macro", f1, on_epoch=True, prog_bar=stage == "val", batch_size=len(labels))
        if self.oos_index is not None:
            is_oos = labels == self.oos_index
            correct = preds == labels
            for name, subset in (("in_scope_acc", ~is_oos), ("recall", is_oos)):
                self.oos_counts[f"{stage}_{name}_hits"].update((correct & subset).sum())
                self.oos_counts[f"{stage}_{name}_total"].update(subset.sum())

    def _log_oos(self, stage: str) -> None:
        """In-scope accuracy and out-of-scope recall over the whole split (counts summed over ranks)."""
        for name in ("in_scope_acc", "recall") if self.oos_index is not None else ():
            hits, total = (self.oos_counts[f"{stage}_{name}_{part}"] for part in ("hits", "total"))
            h, t = hits.compute(), total.compute()  # every rank calls compute: it synchronises
            hits.reset()
            total.reset()
            if float(t) > 0:
                self.log(f"oos/{stage}_{name}", h / t, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        if self.hparams.calibrate or self.oos_index is not None:
            self._fit_on_validation()
        self._log_oos("val")

    def _fit_on_validation(self) -> None:
        """The temperature, then the out-of-scope threshold on the calibrated confidences, from every rank's
        validation logits (gathered: the same values on every rank); then this rank's share of the decisions."""
        width = len(self.labels) + 1
        local = torch.cat(self._val_logits) if self._val_logits else torch.zeros((0, width), device=self.device)
        self._val_logits = []
        rows = gather_rows(local)
        if not len(rows):  # no validation batch ran (every rank sees the same gathered size)
            return
        logits, gold = rows[:, :-1], rows[:, -1].long()
        if self.hparams.calibrate:
            self._fit_temperature(logits, gold)
        if self.oos_index is None:
            return
        if self.hparams.oos_threshold is None:
            confidence, argmax = self.probabilities(logits).max(-1)
            self.threshold.fill_(fit_threshold(confidence, argmax, gold, self.oos_index, len(self.metric_names),
                                               self.hparams.oos_target))
            self.log("oos/threshold", self.threshold, sync_dist=False)
        preds, _ = self.decide(local[:, :-1])  # metrics: own share only (they synchronise at compute)
        self._update_metrics("val", preds, local[:, -1].long())

    def _fit_temperature(self, logits: torch.Tensor, gold: torch.Tensor) -> None:
        known = gold < logits.shape[-1]  # out-of-scope examples without a class say nothing about calibration
        logits, gold = logits[known], gold[known]
        if len(gold) < MIN_EXAMPLES or bool((logits.argmax(-1) == gold).all()):
            # too few examples, or no error to learn how overconfident the model is: the raw softmax stays
            self.temperature.fill_(1.0)
            self.calibration = None
            return
        temperature = fit_temperature(logits, gold)
        figures = calibration_figures(logits, gold, temperature)
        self.temperature.fill_(temperature)
        self.calibration = {"ece_before": figures["ece_before"], "ece_after": figures["ece_after"],
                            "examples": figures["examples"], "split": "val"}
        self.log("calibration/temperature", self.temperature, sync_dist=False)
        self.log("calibration/val_ece_before", figures["ece_before"], sync_dist=False)
        self.log("calibration/val_ece_after", figures["ece_after"], sync_dist=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.misclassified = []
        self.test_report = None
        self._test_confidence = []

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute().float()  # rows: gold, columns: predicted
        self.test_confusion.reset()
        self.test_report = per_class_report(matrix, self.metric_names)
        self.misclassified = gather_lists(self.misclassified)
        self._log_oos("test")
        if self.oos_index is not None:
            self.test_report["oos_threshold"] = float(self.threshold)
            self.test_report["oos_threshold_on"] = "calibrated"
        self.test_report["most_confused"] = most_confused(matrix, self.metric_names)
        self.test_report["calibration"] = self._test_calibration()
        for name, row in self.test_report["per_class"].items():
            self.log(f"test/f1/{name}", row["f1"])

    def _test_calibration(self) -> dict:
        """ECE of the raw and the calibrated confidences on the test split, with their reliability bins."""
        local = torch.cat(self._test_confidence) if self._test_confidence else torch.zeros((0, 3), device=self.device)
        self._test_confidence = []
        rows = gather_rows(local).float().cpu()
        temperature = float(self.temperature)
        out = {"temperature": temperature, "fitted_on": self.calibration, "split": "test", "examples": len(rows),
               "bins": BINS}
        for name, column in (("before", 0), ("after", 1)):
            out[f"ece_{name}"] = expected_calibration_error(rows[:, column], rows[:, 2])
            out.setdefault("reliability", {})[name] = reliability_bins(rows[:, column], rows[:, 2])
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["cs_lightning"]["calibration"] = self.calibration  # plain values: weights_only loads them

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.calibration = (checkpoint.get("cs_lightning") or {}).get("calibration")
        state = checkpoint.get("state_dict", {})
        if "temperature" not in state:  # written before temperatures were fitted: the raw softmax
            state["temperature"] = torch.tensor(1.0)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """One dict per input: its id, the predicted label, its confidence and the top-k alternatives."""
        logits = self(**self.model_inputs(batch))
        preds, _ = self.decide(logits)
        probs = self.probabilities(logits)
        k = min(self.hparams.top_k, probs.shape[-1])
        conf, idx = probs.topk(k, dim=-1)
        conf, idx, preds = conf.cpu().tolist(), idx.cpu().tolist(), preds.cpu().tolist()
        names, metric_names = self.labels, self.metric_names
        return [{"id": rid, "label": metric_names[p], "confidence": c[0],
                 "top_k": [{"label": names[j], "confidence": q} for j, q in zip(i, c)]}
                for rid, p, i, c in zip(batch["ids"], preds, idx, conf)]

    @torch.no_grad()
    def predict_texts(self, texts: list[str], max_length: int = 128) -> list[str]:
        """Label names for raw messages (no history), for quick checks and tests."""
        enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        was_training = self.training
        self.eval()
        preds = self.decide(self(**enc))[0].tolist()
        self.train(was_training)
        return [self.metric_names[i] for i in preds]
