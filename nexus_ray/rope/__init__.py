"""RoPE context extension: scalings (``scaling``), applying them to an engine (``apply``),
long-context evaluation (``evaluate``)."""
