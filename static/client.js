export function watchProgress() {}
