// Placeholder: the package is being written now.
export {};
