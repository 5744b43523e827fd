"""Downstream task heads (MODEL components): a backbone's ``features`` -> task outputs.

Every head (tools/heads/base.py :class:`Head`) has a ``backbone`` sub-module (any MODEL with
``features(video, layers=..., clip_len=...)``, e.g. NextClipTransformer, or PixelFeatures for
the pixel baseline) and the calls the generic engines use: ``prepare(batch, max_frames, device)``
-> inputs, ``forward(**inputs["net"])`` -> outputs, ``loss(outputs, inputs)`` and
``predict(outputs, inputs)``; ``task`` names the metrics evaluate_head computes.
"""
