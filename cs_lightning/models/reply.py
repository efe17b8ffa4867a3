"""Reply generation: a causal LM (GPT, Qwen, Llama) or a sequence-to-sequence model (T5) that answers the customer,
trained with the loss on the reply tokens only (in the chat format: every assistant turn of whole conversations in the
tokenizer's chat template), evaluated on perplexity, BLEU, ROUGE-L, chrF and the business rules."""

from __future__ import annotations

import re

import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.text import CHRFScore, ROUGEScore, SacreBLEUScore
from transformers import LogitsProcessorList

from cs_lightning.constraints import blocked_phrases_processor, template_tokens
from cs_lightning.distributed import global_mean
from cs_lightning.models.base import BackboneModule
from cs_lightning.errors import ConfigError
from cs_lightning.prompts import ChatPrompt, ChatTemplateError, ReplyPrompt, join_cjk
from cs_lightning.rules import BusinessRules


def char_tokens(text: str) -> list[str]:
    """ROUGE units for Chinese: one per character (torchmetrics' default drops non-ASCII text entirely)."""
    return [c for c in text if not c.isspace()]


class GenerationMetrics(nn.Module):
    """BLEU (sacreBLEU; ``zh`` tokenization for Chinese, ``13a`` otherwise), ROUGE-L (per character for Chinese),
    chrF, and business-rule violations, over generated replies; loss and perplexity over every reply token."""

    def __init__(self, language: str, rule_names: list[str]):
        super().__init__()
        zh = language == "zh"
        self.loss = MeanMetric()
        self.bleu = SacreBLEUScore(tokenize="zh" if zh else "13a")
        self.rouge = ROUGEScore(rouge_keys=("rougeL",), tokenizer=char_tokens if zh else None,
                                normalizer=(lambda s: s) if zh else None)
        self.chrf = CHRFScore()
        self.replies = SumMetric()
        self.violating = SumMetric()
        self.rule_names = sorted(set(rule_names))
        self.per_rule = nn.ModuleDict({self._key(n): SumMetric() for n in self.rule_names})

    @staticmethod
    def _key(name: str) -> str:
        return re.sub(r"\W", "_", name)

    def update_generation(self, hypotheses: list[str], references: list[str], violations: list[list[str]]) -> None:
        self.bleu.update(hypotheses, [[r] for r in references])
        self.rouge.update(hypotheses, references)
        self.chrf.update(hypotheses, [[r] for r in references])
        self.replies.update(len(hypotheses))
        self.violating.update(sum(1 for v in violations if v))
        for name in self.rule_names:
            self.per_rule[self._key(name)].update(sum(name in v for v in violations))

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {}
        if self.loss.update_count:
            loss = self.loss.compute()
            out[f"{stage}/loss"] = loss
            out[f"{stage}/ppl"] = torch.exp(loss.clamp(max=50))
        if self.replies.update_count and float(self.replies.compute()) > 0:
            n = self.replies.compute()
            out[f"{stage}/bleu"] = self.bleu.compute() * 100
            out[f"{stage}/rougeL"] = self.rouge.compute()["rougeL_fmeasure"] * 100
            out[f"{stage}/chrf"] = self.chrf.compute() * 100
            out[f"{stage}/rule_violation_rate"] = self.violating.compute() / n
            for name in self.rule_names:
                out[f"{stage}/rule/{name}"] = self.per_rule[self._key(name)].compute() / n
        return out

    def reset(self) -> None:
        for metric in self.children():
            if isinstance(metric, nn.ModuleDict):
                for m in metric.values():
                    m.reset()
            else:
                metric.reset()


class ReplyGenerator(BackboneModule):
    """Fine-tunes a GPT (causal) or T5 (sequence-to-sequence) backbone to write the agent's next reply.

    Args:
        backbone: backbone plugin with a reply task (gpt, t5, generic, ...), or ``auto``: the plugin made for the
            weights' model type, else the generic family (gpt2, qwen2, llama, t5, mt5, bart reply).
        model_name_or_path: hub id or local folder of the weights (or, with ``pretrained: false``, of the
            architecture); None builds ``model_size`` from the plugin's configs.
        model_type: Hugging Face model type of a model built from scratch with ``auto`` or ``generic``
            (``qwen2``, ``bart``...); with weights, their config.json decides.
        pretrained: start from the weights of ``model_name_or_path``; false initialises randomly.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (never on biases and norm weights).
        warmup_ratio: share of the training steps spent warming the learning rate up from 0.
        model_size: architecture when there is no ``model_name_or_path``: tiny, small or base.
        config_overrides: Hugging Face config attributes to change.
        trust_remote_code: run Python code that hub weights ship with (off: only built-in architectures load).
        compile: run the training forward through ``torch.compile`` (pair it with ``data.pad_to_buckets``);
            generation stays eager (its lengths change every token).
        peft: train adapters instead of every weight (null: full fine-tuning), with the ``peft`` library:
            ``{method: lora|dora|ia3, r: 8, alpha: 16, dropout: 0.05, target_modules: null}``; target_modules null
            takes the attention and MLP projections of the model's blocks. With LoRA and DoRA the speaker markers'
            embedding rows train too; checkpoints hold what trains plus a hash of the base weights (README,
            "Adapters").
        gradient_checkpointing: recompute the blocks' activations in the backward pass instead of keeping them
            (less memory, about a third more compute).
        num_beams: beam width when generating (1: greedy).
        max_new_tokens: longest generated reply, in tokens.
        no_repeat_ngram_size: never repeat an n-gram of this size in a reply (0: off).
        repetition_penalty: >1 discourages repeating tokens.
        samples_to_log: generated samples shown in TensorBoard's text tab at each validation.
        language: ``en`` or ``zh`` (metric tokenization); linked from ``data.language``.
        rules_path: business rules file (blocked phrases, required elements, forbidden patterns); set by the CLI
            from ``data.rules_file`` or the domain's own rules.
        tokenizer_path: the tokenizer folder or hub id; set by the CLI from the data module.
        chat: prompts in the tokenizer's chat template (generation stops at its end-of-turn token) instead of the
            speaker markers; set by the CLI from the data module's resolved ``data.prompt_format``.
        system_message: the system message of the chat format, as text; set by the CLI from ``data.system_prompt``
            (or the domain's own), saved with the checkpoint so chat, predict and export use it.
    """

    task = "reply"

    def __init__(self, backbone: str = "gpt", model_name_or_path: str | None = None, model_type: str | None = None,
                 pretrained: bool = True,
                 learning_rate: float = 5e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.05,
                 model_size: str = "small", config_overrides: dict | None = None, num_beams: int = 1,
                 max_new_tokens: int = 48, no_repeat_ngram_size: int = 3, repetition_penalty: float = 1.0,
                 samples_to_log: int = 8, language: str = "en", rules_path: str | None = None,
                 tokenizer_path: str | None = None, trust_remote_code: bool = False, compile: bool = False,
                 peft: dict | None = None, gradient_checkpointing: bool = False, chat: bool = False,
                 system_message: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.build_backbone(backbone, model_name_or_path, pretrained, tokenizer_path, model_size, config_overrides,
                            trust_remote_code=trust_remote_code, model_type=model_type, peft=peft,
                            gradient_checkpointing=gradient_checkpointing)
        self.causal = self.backbone.reply_kind == "causal"
        self.chat = chat
        self.end_of_turn_id: int | None = None
        if self.chat:
            if not self.causal:
                raise ConfigError("data.prompt_format", "the chat format needs a causal (decoder) model, and "
                                                        f"{self.backbone.describe()} is {self.backbone.reply_kind}",
                                  "use prompt_format: markers for sequence-to-sequence models")
            self.end_of_turn_id = self.chat_prompt().end_of_turn_id
        self.rules = BusinessRules.load(rules_path) if rules_path else BusinessRules()
        self.bad_words_ids = self._bad_words_ids()
        names = self.rules.rule_names
        self.val_metrics = GenerationMetrics(language, names)
        self.test_metrics = GenerationMetrics(language, names)
        self._samples: list[tuple[str, str, str]] = []

    def _bad_words_ids(self) -> list[list[int]]:
        """Token sequences of every blocked phrase, in the spellings a reply may use: for exports, whose
        ``generation_config.json`` can only carry token sequences (plain ``generate`` then blocks these spellings;
        this package's own generation uses :class:`~cs_lightning.constraints.BlockedPhrases`, which blocks every
        spelling)."""
        variants = set()
        for phrase in self.rules.blocked_phrases:
            for form in {phrase, phrase.lower(), phrase.capitalize()}:
                for text in (form, " " + form):
                    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                    if ids:
                        variants.add(tuple(ids))
        return [list(v) for v in sorted(variants)]

    def chat_prompt(self, max_length: int = 1024) -> ChatPrompt:
        """The chat format's prompt builder, with this model's tokenizer and system prompt."""
        try:
            return ChatPrompt(self.tokenizer, self.hparams.system_message, max_length)
        except ChatTemplateError as err:
            raise ConfigError("data.prompt_format", str(err), "use prompt_format: markers, or a tokenizer with a "
                                                              "chat template") from None

    @property
    def eos_token_ids(self) -> list[int]:
        """Where a reply ends: EOS, and in the chat format the template's end-of-turn token (``<|im_end|>``)."""
        ids = [self.tokenizer.eos_token_id, self.end_of_turn_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    # ------------------------------------------------------------------ training
    def forward(self, input_ids, attention_mask=None, labels=None):
        # the loss only: no key/value cache to keep (generation has its own path, and gradient checkpointing would
        # warn at every run that it turns the cache off)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch["labels"]
        if "padding" in batch:  # samples repeated to fill a short last batch train nothing
            labels = labels.masked_fill(batch["padding"][:, None], -100)
        total, tokens = self.token_loss_sum(batch["input_ids"], batch["attention_mask"], labels)
        # a mean over the reply tokens of the whole global batch, as one rank computes it, whatever each rank holds
        loss, mean = global_mean(total, tokens)
        self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def token_loss_sum(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed cross-entropy of the reply tokens and their number (labels other than -100), which the
        Hugging Face loss would divide: causal models predict each label from the tokens before it; sequence-to-
        sequence decoders read the labels shifted right, as when ``labels`` are given to the model."""
        if self.causal:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            # the label of position t is token t+1; padded on the right rather than slicing the logits (no copy)
            targets = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        else:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
            inputs = {"decoder_input_ids": prepare(labels=labels)} if prepare else {"labels": labels}
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs).logits
            targets = labels
        total = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                            reduction="sum")
        return total, (targets != -100).sum()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_replies(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, streamer=None) -> list[str]:
        """Decoded replies for a batch of prompts (left-padded for causal models). ``streamer``: a ``transformers``
        streamer (one prompt, greedy) that receives the tokens as they are chosen; they are final, since the blocked
        phrases are ruled out before a token is picked."""
        hp = self.hparams
        tok = self.tokenizer
        processors = LogitsProcessorList()
        if self.rules.blocked:  # checked on the decoded text: holds however the tokenizer splits the phrase
            processors.append(blocked_phrases_processor(
                self.rules.blocked, tok, prompt_length=input_ids.shape[1] if self.causal else 1,
                max_new_tokens=hp.max_new_tokens, eos_token_ids=self.eos_token_ids, num_beams=hp.num_beams))
        with self.eager():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=hp.max_new_tokens,
                num_beams=hp.num_beams, do_sample=False, no_repeat_ngram_size=hp.no_repeat_ngram_size or None,
                repetition_penalty=hp.repetition_penalty, pad_token_id=tok.pad_token_id,
                eos_token_id=self.eos_token_ids, logits_processor=processors,
                suppress_tokens=(template_tokens(tok, self.eos_token_ids) or None) if self.chat else None,
                **({"streamer": streamer} if streamer is not None else {}))
        if self.causal:
            out = out[:, input_ids.shape[1]:]
        texts = tok.batch_decode(out, skip_special_tokens=True)
        texts = [" ".join(t.split()) for t in texts]
        if hp.language == "zh":
            texts = [join_cjk(t) for t in texts]
        return texts  # as generated: the rules are measured on these, nothing repairs them afterwards

    def _evaluate(self, batch: dict, stage: str, metrics: GenerationMetrics) -> None:
        if "labels" in batch:  # loss and perplexity on every example
            loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
            metrics.loss.update(loss.detach(), weight=(batch["labels"] != -100).sum())
            return
        replies = self.generate_replies(batch["input_ids"], batch["attention_mask"])
        contexts, intents = batch["contexts"], batch.get("intents") or [None] * len(replies)
        violations = [self.rules.violations(r, c, i) for r, c, i in zip(replies, contexts, intents)]
        metrics.update_generation(replies, batch["references"], violations)
        room = self.hparams.samples_to_log - len(self._samples)
        for context, ref, hyp in list(zip(contexts, batch["references"], replies))[:max(0, room)]:
            self._samples.append((" / ".join(f"{t.role}: {t.text}" for t in context[-4:]), ref, hyp))

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def _epoch_end(self, stage: str, metrics: GenerationMetrics) -> None:
        for name, value in metrics.compute(stage).items():
            self.log(name, value, prog_bar=name.endswith(("loss", "bleu")), add_dataloader_idx=False)
        metrics.reset()
        if self._samples and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            experiment = getattr(self.logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                rows = ["| context | reference | generated |", "|---|---|---|"]
                rows += ["| " + " | ".join(c.replace("|", "/") for c in sample) + " |" for sample in self._samples]
                experiment.add_text(f"{stage}/samples", "\n".join(rows), self.global_step)
        self._samples = []

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test", self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """One dict per conversation: its id and the generated next agent reply."""
        replies = self.generate_replies(batch["input_ids"], batch["attention_mask"])
        return [{"id": rid, "reply": reply} for rid, reply in zip(batch["ids"], replies)]

    @torch.no_grad()
    def reply_to(self, turns, domain: str | None = None, max_context_tokens: int = 192, max_history_turns: int = 6,
                 domain_prefix: bool = True, max_length: int = 1024, streamer=None) -> str:
        """The next agent reply to a conversation (a list of ``Turn``), for chat and quick checks; the prompt is
        built exactly as in training (:class:`~cs_lightning.prompts.ReplyPrompt`, or in the chat format
        :class:`~cs_lightning.prompts.ChatPrompt` with the system prompt the model was trained with; ``domain``,
        ``max_context_tokens``, ``max_history_turns`` and ``domain_prefix`` are the marker format's, ``max_length``
        the chat format's). ``streamer`` receives the reply's tokens as they are generated (greedy search only:
        ``transformers`` streams no beam search)."""
        if self.chat:
            prompt_ids = self.chat_prompt(max_length).prompt_ids(tuple(turns))
        else:
            prompt = ReplyPrompt(self.tokenizer, self.backbone.reply_kind, max_context_tokens, max_history_turns,
                                 domain_prefix)
            prompt_ids = prompt.encode(tuple(turns), domain)[0]
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        was_training = self.training
        self.eval()
        reply = self.generate_replies(ids, torch.ones_like(ids), streamer=streamer)[0]
        self.train(was_training)
        return reply
