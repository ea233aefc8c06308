"""The oracle: a plain torch float32 forward pass every fast path is checked against."""
