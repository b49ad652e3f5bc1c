"""The rnn family: an LSTM reading MNIST digits row by row."""
