"""Text in and out: tokenizers, the streaming detokenizer, chat templates, calibration text."""
