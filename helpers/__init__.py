"""Helpers for the resnet18-cifar10 notebook series: config, data, augment, model, train, evaluate, plots."""
