"""Input data: tokenizers, image transforms, webdataset pipeline, shard writer, demo corpus.

Import the submodules directly (``from clip_jax.data import tokenizer``); this package imports
nothing itself, so that importing one part never pulls in the dependencies of another.
"""
