"""Documents: decoding pages within limits, OCR output, field extraction, the record store."""
