// window "load" fires once every image has settled; headless checks read the counts off the body element
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !im.complete || im.naturalWidth === 0; });
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken.length);
});
