"""The cut-out service: HTTP API and page (``app``), its limits, inputs and metrics, and the image compositing
that the batch tool (``inference.predict``) shares. The models come from ``inference.service``."""
