"""The history writer: ICD section 7's samples at packet time, sent with remote write 1.0."""
