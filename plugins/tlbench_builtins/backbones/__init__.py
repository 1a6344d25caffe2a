"""Built-in backbone providers: every timm model, and the digit networks of the DA literature."""
