// Drives the page of `patchwise serve` in headless chromium (puppeteer-core): opens it
// at a phone's width, uploads an image through its file input, waits for the answer and
// saves a screenshot. Prints what it found as JSON.
//
//   node page_driver.cjs PUPPETEER_CORE URL IMAGE SCREENSHOT
"use strict";
const [core, url, image, shot] = process.argv.slice(2);
const puppeteer = require(core);

(async () => {
  const browser = await puppeteer.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 390, height: 844, deviceScaleFactor: 1 });
    await page.goto(url, { waitUntil: "networkidle0", timeout: 60000 });
    const input = await page.$("#file");
    await input.uploadFile(image);
    await page.waitForFunction(
      () => !/Classifying|No image/.test(document.querySelector("#result").textContent),
      { timeout: 60000 });
    const result = await page.$eval("#result", (e) => e.textContent);
    const error = await page.$eval("#error", (e) => e.textContent);
    const boxes = await page.$$eval("#patches .patch", (e) => e.length);
    // Pixels of the patch outlines' colour (#ffd32a) drawn on the canvas.
    const outlined = await page.$eval("#view", (cv) => {
      const d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) n += d[i] === 255 && d[i + 1] === 211 && d[i + 2] === 42;
      return n;
    });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    await page.screenshot({ path: shot, fullPage: true });
    console.log(JSON.stringify({ result, error, boxes, outlined, overflow }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String(e));
  process.exit(1);
});
