"""The model: the modified ResNet50, where its weights come from, and what a training step of it keeps in memory."""
