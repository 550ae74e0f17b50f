"""Helpers for the resnet18-cifar10 notebook series: config, data, augment, model, device and execution,
train (with resume and checkpoint), evaluate, predict, gradcam, plots, progress and series."""
