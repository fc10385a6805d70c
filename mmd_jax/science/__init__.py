"""Science tools: the E-step check, the fake-score check, DNCP."""
