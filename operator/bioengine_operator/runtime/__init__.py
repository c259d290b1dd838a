"""Code that runs inside the pods the operator creates, not in the operator itself."""
