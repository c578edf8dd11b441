"""The formats of other CLIP tools: open_clip (``open_clip``), Hugging Face ``CLIPModel``
(``hf``), their state-dict keys and layouts (``keymap``) and weight files (``weights_io``)."""
