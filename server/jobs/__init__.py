"""Jobs: the folder store, input access and the runner shared by the server and `cvgen render`."""
