"""The pocket model: the course's own tiny Llama, its tokenizer and its pretraining."""
