"""Structured output: grammars that constrain which tokens a request may generate (llguidance).

`spec` (what the output must match) imports without torch, for front ends; `compiler` and
`matcher` are the engine's side.
"""
