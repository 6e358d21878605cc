"""Make trained prompts cheaper: Prompt Condensation (`pc`) and E²VPT token/segment pruning (`e2vpt`)."""
