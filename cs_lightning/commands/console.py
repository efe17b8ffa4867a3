"""What a person sees in the terminal while cs-train runs: expected noise filtered narrowly (each filter names one
logger or warning and one message; anything else those sources say still shows), Lightning's progress bar without
``v_num``, and its model summary without a column of zero FLOPs."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Callable

from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar

# Each filter names one logger or one warning and one message; anything else those sources say still shows.
# the heads AutoModelForSequenceClassification adds: BERT/RoBERTa, GPT-2, T5, DistilBERT
_HEAD_PREFIXES = ("classifier.", "score.", "classification_head.", "pre_classifier.")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _only_new_head(report: str) -> bool:
    """Whether a transformers ``LOAD REPORT`` lists nothing but the classification head as MISSING: the head that an
    intent model creates on purpose (any UNEXPECTED, MISMATCH or other MISSING key keeps the report visible)."""
    rows, in_table = [], False
    for line in _ANSI.sub("", report).splitlines():
        if not in_table:
            in_table = bool(line) and set(line) <= {"-", "+"}  # the rule under the header row
        elif not line.strip():
            break
        else:
            key, _, rest = line.partition(" | ")
            rows.append((key.strip(), rest.partition(" | ")[0].strip()))
    return bool(rows) and all(status == "MISSING" and key.startswith(_HEAD_PREFIXES) for key, status in rows)


def _transformers_noise(message: str) -> bool:
    # `loss_type=None`: GPT-2 configs carry no loss type and transformers warns about its own default
    return (("LOAD REPORT" in message and _only_new_head(message))
            or message.startswith("`loss_type=None` was set in the config but it is unrecognized"))


def _lightning_noise(message: str) -> bool:
    # advertising for Lightning's cloud services, printed on every run
    return message.startswith("💡 Tip:") and ("[litlogger]" in message or "[litmodels]" in message)


class _DropExpected(logging.Filter):
    """Drops the records of the logger it is added to that ``expected`` recognises; every other record passes."""

    def __init__(self, expected: Callable[[str], bool]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.expected(record.getMessage())


_LOG_FILTERS = {"transformers.modeling_utils": _DropExpected(_transformers_noise),
                "lightning.pytorch.utilities.rank_zero": _DropExpected(_lightning_noise)}


def _hide_weight_loading_bar(factory, args, kwargs):
    """transformers' tqdm hook: the "Loading weights" bar (one flash per model load) is created disabled."""
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def quiet_expected_noise() -> None:
    """Silences what every cs-train run would print without telling the user anything: transformers' report on the
    classification head it initialises (and its "Loading weights" bar), Lightning's advertising tip, and a
    deprecation warning from inside Lightning. Idempotent; real warnings and other reports still show."""
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(log_filter)  # addFilter skips a filter already there
    # Lightning 2.6 builds torch's deprecated LeafSpec; nothing a user can change (filterwarnings drops duplicates)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(_hide_weight_loading_bar)
    if previous not in (None, _hide_weight_loading_bar):
        hf_logging.set_tqdm_hook(previous)  # someone else's hook decides about every bar: leave it in place


# ---------------------------------------------------------------------- progress bar and model summary
class RunProgressBar(RichProgressBar):
    """Lightning's Rich progress bar without ``v_num``, the logger's version number shown as if it were a metric
    (``v_num: 0.000``); the run folder (``version_N``) shows in the summary at the end of ``fit``."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class _RichSummaryWithoutFlops(RichModelSummary):
    """Lightning's Rich model summary, less the FLOPs column and total when nothing was counted: Lightning counts
    FLOPs only for a model with an ``example_input_array``, and prints a column of zeros otherwise."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        if total_flops:
            return RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                              total_training_modes, total_flops, **summarize_kwargs)
        from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:  # the styles of RichModelSummary
            table.add_column(name, style="dim" if name == " " else "white" if name.endswith("sizes") else None,
                             justify="right" if name.startswith("Params") or name.endswith("sizes") else "left",
                             no_wrap=name == "Name")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in (
                ("Trainable params", get_human_readable_count(int(trainable_parameters))),
                ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
                ("Total params", get_human_readable_count(int(total_parameters))),
                ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
                ("Modules in train mode", total_training_modes["train"]),
                ("Modules in eval mode", total_training_modes["eval"])):
            grid.add_row(f"[bold]{label}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(grid)


class _SummaryWithoutFlops(ModelSummary):
    """Lightning's plain model summary (its default without ``rich``, or when a config asks for it), less the FLOPs
    column and total when nothing was counted."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        if total_flops:
            return ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                          total_training_modes, total_flops, **summarize_kwargs)
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *(column for column in summary_data if column[0] != "FLOPs"))
        # the table ends with the "Total Flops" line; Lightning logs the summary on this logger
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + table.rpartition("\n")[0])


WITHOUT_FLOPS = {RichModelSummary: _RichSummaryWithoutFlops, ModelSummary: _SummaryWithoutFlops}
