"""A small BERT-style regression classifier, made for the tests the way the FineWeb-Edu classifier is built (a
``BertForSequenceClassification`` with one output, scores on a 0-5 scale), fine-tuned for a few steps on the demo
corpus's real pages: the high-quality pages (prose of the library / tutorial / howto pages) towards 4, the
low-quality ones (index, changelog, copyright... pages: ``finephrase.demo_data.LOW_QUALITY_PARTS``) towards 1.
Its WordPiece tokenizer is trained on the same pages (``tokenizers``), and everything is saved with
``save_pretrained``, so it loads as any Hub classifier does. Tiny (2 layers, 32 wide): made in seconds on a CPU.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from finephrase.demo_data import LOW_QUALITY_PARTS

HQ_TARGET, LQ_TARGET = 4.0, 1.0
MAX_TOKENS = 64


def demo_pages(demo_data: Path) -> list[tuple[str, bool]]:
    """(text, is high quality) of the demo corpus's pages."""
    out = []
    with gzip.open(demo_data / "docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            rel = doc["id"].split("/", 1)[1]
            low = any(rel.startswith(p) or f"/{p}" in rel for p in LOW_QUALITY_PARTS)
            out.append((doc["text"], not low))
    return out


def train_tiny_classifier(demo_data: Path, folder: Path, steps: int = 60, seed: int = 0, lr: float = 3e-3,
                          per_label: int = 4) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    pages = demo_pages(demo_data)
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator([t[:2000] for t, _ in pages], trainers.WordPieceTrainer(  # the model reads 64 tokens
        vocab_size=3000, min_frequency=2, special_tokens=special, show_progress=False))
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, wordpiece.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, model_max_length=MAX_TOKENS, unk_token="[UNK]",
                                        pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=wordpiece.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=MAX_TOKENS, num_labels=1,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        problem_type="regression", id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0})
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    hq = [t[:2000] for t, good in pages if good]  # the model reads 64 tokens: the beginning of each page
    lq = [t[:2000] for t, good in pages if not good]
    model.train()
    for _ in range(steps):
        batch = [(t, HQ_TARGET) for t in rng.sample(hq, per_label)] + [(t, LQ_TARGET) for t in rng.sample(lq, per_label)]
        enc = tokenizer([t for t, _ in batch], return_tensors="pt", padding=True, truncation=True)
        loss = model(**enc, labels=torch.tensor([[y] for _, y in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
