// Placeholder: being written now; replaced before this is used.
export {};
