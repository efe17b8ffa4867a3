"""cs-lightning: fine-tune BERT, GPT and T5 models for customer service on PyTorch Lightning."""

__version__ = "0.1.0"
