import { colour, normalise, selectMap } from "./attention";
import { attentionMaps } from "./test-data";

const maps = attentionMaps(3);

test("no layer and no head is the server's mean over both", () => {
  expect(selectMap(maps, 1, null, null)).toEqual(maps.mean[1]);
});

test("a layer and a head pick one map", () => {
  expect(selectMap(maps, 0, 1, 1)).toEqual([0, 0, 1, 0]); // cell (0 + 1 + 1) % 4
});

test("a layer alone averages its heads, a head alone averages the layers", () => {
  expect(selectMap(maps, 0, 1, null)).toEqual([0, 0.5, 0.5, 0]);
  expect(selectMap(maps, 0, null, 0)).toEqual([0.5, 0.5, 0, 0]);
});

test("the mean over everything agrees with averaging per head", () => {
  const averaged = [0, 1].map((l) => selectMap(maps, 2, l, null));
  const mean = averaged[0].map((v, i) => (v + averaged[1][i]) / 2);
  expect(selectMap(maps, 2, null, null)).toEqual(mean);
});

test("normalise stretches to [0, 1] and keeps flat maps flat", () => {
  expect(normalise([0.2, 0.4, 0.3])).toEqual([0, 1, expect.closeTo(0.5)]);
  expect(normalise([0.25, 0.25])).toEqual([0, 0]);
});

test("the colour ramp runs from dark purple to pale yellow", () => {
  expect(colour(0)).toEqual([0, 0, 4]);
  expect(colour(1)).toEqual([252, 255, 164]);
  expect(colour(0.5)).toEqual([188, 55, 84]);
  expect(colour(2)).toEqual([252, 255, 164]);
});
