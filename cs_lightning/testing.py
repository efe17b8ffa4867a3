"""The backbone plugin contract, as a check any plugin can run against itself::

    from cs_lightning.testing import check_backbone

    def test_my_plugin_honours_the_contract():
        check_backbone("distilbert")
        check_backbone("generic", model_type="roberta")  # a generic plugin, for one model type it covers

It builds the plugin's tiny model for every task it supports (offline, with a tokenizer trained on a few
sentences), checks that ``layer_groups`` starts with the input embeddings and covers every parameter outside the
task head exactly once, that the tokenizer round-trips text, and that one training step gives a finite loss and
gradients. The head is what ``model`` holds outside ``model.base_model``, its output embeddings, and a pooler.
"""

from __future__ import annotations

import torch

from cs_lightning.registry import resolve_backbone
from cs_lightning.tokenization import train_tokenizer

SENTENCES = ["where is my parcel", "i want a refund", "my card was stolen", "reset my password",
             "退款什么时候到账", "快递还没到", "can i change the address", "the payment failed"] * 3
LABELS = ["a", "b", "c"]


def check_backbone(name: str, tmp_cache: str | None = None, model_type: str | None = None) -> dict:
    """Run the contract checks on the installed plugin ``name`` (``auto`` or a generic plugin with ``model_type``);
    raises AssertionError on a broken promise. Returns a summary (tasks checked, number of layer groups, parameter
    counts)."""
    backbone = resolve_backbone(name, None, model_type)
    summary = {"name": name, "model_type": model_type, "tasks": list(backbone.supported_tasks)}
    assert backbone.model_types, "model_types must name the Hugging Face model types the plugin accepts"
    assert "tiny" in backbone.sizes, "sizes must include 'tiny' for offline tests"
    path = train_tokenizer(SENTENCES, backbone.tokenizer_kind, vocab_size=300, cache_dir=tmp_cache)
    tokenizer = backbone.load_tokenizer(str(path))
    assert tokenizer.pad_token_id is not None, "the tokenizer needs a pad token (fix it in prepare_tokenizer)"
    ids = tokenizer("where is my parcel", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).strip().replace(" ", "") == "whereismyparcel", "tokenizer round trip failed"
    for task in backbone.supported_tasks:
        model = backbone.load_model(task, None, False, tokenizer, labels=LABELS, size="tiny")
        groups = backbone.layer_groups(model)
        assert len(groups) >= 2, "layer_groups must give the embeddings and at least one block"
        owner: dict[int, str] = {}
        for group in groups:
            for module in group.modules:
                for p in module.parameters():
                    assert id(p) not in owner, f"{group.name} repeats a parameter of {owner.get(id(p))}"
                    owner[id(p)] = group.name
        outside = [n for n, p in model.named_parameters() if id(p) not in owner]
        assert outside or task == "reply", "the task head must stay outside the layer groups"
        base = {id(p) for p in model.base_model.parameters()}
        head = {id(p) for n, p in model.named_parameters() if id(p) not in base or ".pooler." in f".{n}"}
        output = model.get_output_embeddings()
        head |= {id(p) for p in output.parameters()} if output is not None else set()
        missed = [n for n, p in model.named_parameters() if id(p) not in owner and id(p) not in head]
        assert not missed, f"layer_groups leave out parameters that are not the head's: {missed[:4]}"
        assert not [n for n, p in model.named_parameters() if id(p) in owner and id(p) not in base], \
            "the task head must stay outside the layer groups"
        embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
        assert embeddings <= {id(p) for m in groups[0].modules for p in m.parameters()}, \
            "the first layer group must hold the input embeddings"
        batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
        inputs = {k: v for k, v in batch.items() if k in tokenizer.model_input_names}
        model.train()
        if task == "intent":
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([0, 1, 2, 0]))
        else:
            labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
            loss = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels).loss
        loss.backward()
        assert torch.isfinite(loss), f"{task}: training loss is not finite"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), "no gradients"
        summary[task] = {"layer_groups": len(groups), "parameters": sum(p.numel() for p in model.parameters()),
                         "head_parameters": len(outside)}
    return summary
