"""Library of the data tools: JSONL reading, corpus documents, archive readers, the committed fixtures."""
