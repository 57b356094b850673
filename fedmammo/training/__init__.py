"""Local training loops (plain torch, no Flower): what a centre does with its own data."""
