"""The framework adapters: a framework's training events translated into
:class:`~zarrec.capture.model_recorder.ModelRecorder` calls (Hugging Face Trainer, PyTorch Lightning)."""
