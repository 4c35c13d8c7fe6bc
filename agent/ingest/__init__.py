"""The platform side: a reference receiver that verifies, stores and acknowledges evidence."""
