"""``nashmoe convert`` and ``nashmoe upcycle``: transformers checkpoints in, checkpoints out.

Kept outside :mod:`nashmoe.hf` so that a missing transformers is a one-line error."""
