import "@testing-library/jest-dom/vitest";

// jsdom has no object URLs; the page only needs them to be unique strings.
let objectUrls = 0;
URL.createObjectURL = () => `blob:test/${++objectUrls}`;
URL.revokeObjectURL = () => {};

// jsdom has no canvas either: drawing is skipped (the e2e tests check real pixels in Chromium).
HTMLCanvasElement.prototype.getContext = () => null;
