"""Control: prompt-to-prompt attention controllers and the token aligners they use."""
