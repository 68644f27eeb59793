"""Local servers that speak the providers' documented wire formats, so the
real SDKs (``replicate``, ``openai``) run their HTTP code in tests."""
