"""TensorRT engine building, runners and Polygraphy validation of engines."""
