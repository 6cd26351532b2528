import { downloadTracker } from "./deviceCaptioner";

test("the download's total is known once every file's size is, and the bytes add up", () => {
  const heard: [number, number | null][] = [];
  const track = downloadTracker((loaded, total) => heard.push([loaded, total]));
  const wasm = track("ort.wasm.gz");
  const graph = track("encoder.onnx");
  wasm(0, 300);
  wasm(100, 300);
  graph(0, 1000); // every size known from here
  graph(600, 1000);
  wasm(300, 300);
  graph(1000, 1000);
  expect(heard).toEqual([
    [0, null],
    [100, null],
    [100, 1300],
    [700, 1300],
    [900, 1300],
    [1300, 1300],
  ]);
});

test("a file whose size the server does not say leaves the total unknown", () => {
  const heard: (number | null)[] = [];
  const track = downloadTracker((_, total) => heard.push(total));
  const sized = track("a");
  const unsized = track("b");
  sized(10, 10);
  unsized(5, null);
  expect(heard).toEqual([null, null]);
});
